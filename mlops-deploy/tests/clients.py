"""Stock clients against a running mlops-deploy server (run by tests/deploy.rs).

usage: clients.py BASE_URL MODEL IMAGE...

Drives the server with clients nobody here wrote: tritonclient.http (the Open Inference
Protocol's own client, default settings: binary tensor data both ways), requests with
multipart uploads as browsers and requests_toolbelt form them (mixed-case and quoted
boundaries), and the KServe v1 route. Prints one JSON object with what each client got; the
Rust test compares it with the TorchServe endpoint's answers.
"""
import base64
import json
import sys

import numpy as np
import requests
import tritonclient.http as httpclient
from requests_toolbelt.multipart.encoder import MultipartEncoder
from tritonclient.utils import InferenceServerException

base, model, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
images = [open(p, "rb").read() for p in paths]
host = base.split("://", 1)[1]
out = {}

client = httpclient.InferenceServerClient(url=host)
out["live"] = client.is_server_live()
out["ready"] = client.is_server_ready()
out["server"] = client.get_server_metadata()
out["model_ready"] = client.is_model_ready(model)
out["metadata"] = client.get_model_metadata(model)


def triton(binary_in, outputs=None, request_id=""):
    # JSON tensors carry BYTES as text: images go base64-encoded, the server's convention;
    # binary tensor data carries the raw files.
    items = images if binary_in else [base64.b64encode(i) for i in images]
    data = np.array(items, dtype=np.object_)
    inp = httpclient.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(data, binary_data=binary_in)
    result = client.infer(model, [inp], outputs=outputs, request_id=request_id,
                          parameters={"note": "parameters are accepted"})
    response = result.get_response()
    return {
        "id": response.get("id"),
        # Binary BYTES come back as bytes, JSON ones as str.
        "labels": [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        if result.as_numpy("label") is not None else None,
        "classes": result.as_numpy("class").tolist() if result.as_numpy("class") is not None else None,
    }


# Defaults: binary input, no outputs named (binary outputs).
out["triton_default"] = triton(True, request_id="req-7")
# JSON input, JSON outputs asked for by name.
json_outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("class", "label")]
out["triton_json"] = triton(False, outputs=json_outputs)
# Mixed: binary class only.
out["triton_class_only"] = triton(False, outputs=[httpclient.InferRequestedOutput("class")])
# The explanation outputs, named (binary by default): the neighbours that voted.
inp = httpclient.InferInput("image", [len(images)], "BYTES")
inp.set_data_from_numpy(np.array(images, dtype=np.object_))
names = ["neighbor_ids", "neighbor_labels", "neighbor_similarities", "neighbor_thumbnails"]
result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(n) for n in names])
ids = result.as_numpy("neighbor_ids")
out["triton_neighbors"] = {
    "shape": list(ids.shape),
    "labels": [[x.decode() for x in row] for row in result.as_numpy("neighbor_labels")],
    "similarities_descending": bool(np.all(np.diff(result.as_numpy("neighbor_similarities"), axis=1) <= 1e-6)),
    "thumbnails_png": bool(all(t.startswith(b"\x89PNG") for t in result.as_numpy("neighbor_thumbnails").ravel())),
}
try:
    client.infer("no-such-model", [httpclient.InferInput("image", [1], "BYTES")])
    out["triton_error"] = None
except InferenceServerException as e:
    out["triton_error"] = str(e)

# TorchServe API with multipart uploads, one image each: a browser's mixed-case boundary and a
# quoted one.
multipart = {}
for form, boundary in [("webkit", "----WebKitFormBoundaryAbC9xYz1QwErTy"),
                       ("quoted", None)]:
    labels = []
    for i, image in enumerate(images):
        if boundary:
            enc = MultipartEncoder(fields={"data": (f"{i}.png", image, "image/png")}, boundary=boundary)
            content_type = enc.content_type
        else:
            enc = MultipartEncoder(fields={"data": (f"{i}.png", image, "image/png")},
                                   boundary="Quoted=Boundary+With:Odd.Chars")
            content_type = 'multipart/form-data; boundary="Quoted=Boundary+With:Odd.Chars"'
        r = requests.post(f"{base}/predictions/{model}", data=enc.to_string(),
                          headers={"Content-Type": content_type})
        labels.append(r.json().get("label") if r.ok else f"HTTP {r.status_code}: {r.text}")
    multipart[form] = labels
# requests' own multipart (files=...), as most scripts call it.
multipart["requests"] = [
    requests.post(f"{base}/predictions/{model}", files={"data": ("x.png", image, "image/png")}).json()["label"]
    for image in images
]
out["multipart"] = multipart

# KServe v1.
r = requests.post(f"{base}/v1/models/{model}:predict",
                  json={"instances": [{"b64": base64.b64encode(i).decode()} for i in images]})
out["v1"] = [p["label"] for p in r.json()["predictions"]] if r.ok else f"HTTP {r.status_code}: {r.text}"
print(json.dumps(out))
