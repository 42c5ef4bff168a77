"""The management listener's registry page in a real browser (headless Chromium through
selenium; run by tests/deploy.rs).

usage: registry_page.py MANAGEMENT_URL MODEL TOKEN SCREENSHOT

Enters the token, makes version 2 the default with the page's button, then rolls back with
the page's button; after each, reads GET /models/MODEL as any client would. Prints what it saw.
"""
import json
import os
import sys

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

os.environ.setdefault("SE_OFFLINE", "true")
base, model, token, screenshot = sys.argv[1:5]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def default_version():
    return requests.get(f"{base}/models/{model}").json()[0]["modelVersion"]


def status_cell(version):
    # Read in one script: the page re-renders its table after every change.
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]); return r ? r.cells[3].textContent : '';",
        f"row-{model}-{version}")


seen = {}
try:
    driver.get(base + "/")
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_elements(By.ID, f"promote-{model}-2"))
    seen["rows"] = len(driver.find_elements(By.CSS_SELECTOR, "tbody tr"))
    seen["views"] = [a.text for a in driver.find_elements(By.CSS_SELECTOR, f"#row-{model}-1 .views a")]
    seen["before"] = default_version()
    # Without the token the server refuses, and the page says so.
    driver.find_element(By.ID, f"promote-{model}-2").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    seen["refused"] = driver.find_element(By.ID, "error").text
    seen["after_refusal"] = default_version()
    token_input = driver.find_element(By.ID, "token")
    token_input.send_keys(token)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", token_input)
    driver.find_element(By.ID, f"promote-{model}-2").click()
    wait.until(lambda d: "default" in status_cell(2))
    seen["promoted"] = default_version()
    seen["status"] = driver.find_element(By.ID, "status").text
    driver.save_screenshot(screenshot)
    driver.find_element(By.ID, f"rollback-{model}").click()
    wait.until(lambda d: "default" in status_cell(1))
    seen["rolled_back"] = default_version()
    print(json.dumps(seen))
finally:
    driver.quit()
