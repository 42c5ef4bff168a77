"""Posts every test image written by serve_bench_prepare to TorchServe (port 18080) and prints
the accuracy; used by scripts/torchserve_check.sh."""
import json, sys, urllib.request, concurrent.futures as cf
work = sys.argv[1]
labels = json.load(open(f"{work}/labels.json"))
def one(i):
    data = open(f"{work}/images/{i:06d}.png", "rb").read()
    req = urllib.request.Request("http://127.0.0.1:18080/predictions/fashion-mnist", data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["class"] == labels[i]
with cf.ThreadPoolExecutor(8) as ex:
    ok = sum(ex.map(one, range(len(labels))))
print(f"torchserve accuracy over {len(labels)} test images: {ok / len(labels):.4f}")
