"""The inference web page in a real browser (headless Chromium through selenium; run by
tests/deploy.rs).

usage: browser.py BASE_URL IMAGE SCREENSHOT

Opens BASE_URL/ at a phone's width, uploads IMAGE through the page's file input, waits for the
answer, and prints what the page shows: the predicted label, the neighbour thumbnails (loaded
or not), the vote rows, whether the page fits the width, and whether the inputs have labels.
"""
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
base, image, screenshot = sys.argv[1:4]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=412,1400"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(base + "/")
    models = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]
    driver.find_element(By.ID, "file").send_keys(os.path.abspath(image))
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "result").is_displayed()
        or d.find_element(By.ID, "error").is_displayed()
    )
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#neighbours img')].every(i => i.complete)"))
    shown = {
        "models": models,
        "error": driver.find_element(By.ID, "error").text,
        "label": driver.find_element(By.ID, "label").text,
        "version": driver.find_element(By.ID, "version").text,
        "thumbnails": driver.execute_script(
            "return [...document.querySelectorAll('#neighbours img')]"
            ".map(i => ({loaded: i.complete && i.naturalWidth > 0, alt: i.alt}))"),
        "votes": len(driver.find_elements(By.CSS_SELECTOR, "#votes li")),
        "fits_width": driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"),
        "inputs_labelled": driver.execute_script(
            "return ['model', 'file'].every(id => document.querySelector(`label[for=${id}]`))"),
    }
    driver.save_screenshot(screenshot)
    print(json.dumps(shown))
finally:
    driver.quit()
