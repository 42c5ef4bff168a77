"""TorchServe handler for an mlops-rs model archive (written by `mlops-deploy package`).

Does what `mlops-deploy serve` does: decode the image, convert to 8-bit grayscale, resize
(bilinear) to the model's input, map pixels with the data stage's scale and shift, embed with
the TorchScript model, search the FAISS index and let the k nearest gallery images vote.

Differences from the Rust server, by construction of the libraries: PIL converts colour to gray
with ITU-R 601 weights where the `image` crate uses BT.709, and PIL's bilinear resize is not
the `image` crate's triangle filter, so colour or other-size inputs can differ slightly; 8-bit
grayscale images of the model's size (the data set's own) are identical.
"""

import base64
import io
import json
import os

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class KnnHandler(BaseHandler):
    def initialize(self, context):
        # BaseHandler loads the TorchScript serializedFile (model.pt) with torch.jit.load.
        super().initialize(context)
        self.model.eval()
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "model.json")) as f:
            self.description = json.load(f)
        with open(os.path.join(model_dir, "classifier.json")) as f:
            self.spec = json.load(f)
        import faiss

        self.index = faiss.read_index(os.path.join(model_dir, "index.faiss"))
        params = faiss.ParameterSpace()
        if self.spec.get("nprobe") is not None:
            params.set_index_parameter(self.index, "nprobe", self.spec["nprobe"])
        if self.spec.get("ef_search") is not None:
            params.set_index_parameter(self.index, "efSearch", self.spec["ef_search"])
        self.labels = np.load(os.path.join(model_dir, "labels.npy"))
        centres = os.path.join(model_dir, "centres.npy")
        self.centres = np.load(centres) if os.path.exists(centres) else None
        self.classes = self.description["classes"]
        norm = self.description.get("normalization")
        one, full = np.float32(1.0), np.float32(255.0)
        if norm:
            mean, std = np.float32(norm["mean"]), np.float32(norm["std"])
            self.scale, self.shift = one / (full * std), -mean / std
        else:
            self.scale, self.shift = one / full, np.float32(0.0)
        _, self.height, self.width = self.description["input_shape"]

    def preprocess(self, data):
        rows = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            img = Image.open(io.BytesIO(image)).convert("L")
            if img.size != (self.width, self.height):
                img = img.resize((self.width, self.height), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
            rows.append(pixels * self.scale + self.shift)
        batch = np.stack(rows).astype(np.float32)[:, None, :, :]
        return torch.from_numpy(batch)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data).cpu().numpy().astype(np.float32)

    def postprocess(self, embeddings):
        k = int(self.spec["k"])
        sims, ids = self.index.search(embeddings, k)
        if self.spec.get("metric") == "l2":
            sims = 1.0 - sims / 2.0
        answers = []
        scoring = self.spec.get("scoring", "knn")
        centre_weight = {"knn": 0.0, "centre": 1.0}.get(scoring, self.spec.get("centre_weight", 0.0))
        if self.centres is None:
            centre_weight = 0.0
        else:
            logits = embeddings @ self.centres.T / self.spec.get("temperature", 0.1)
            soft = np.exp(logits - logits.max(axis=1, keepdims=True))
            soft /= soft.sum(axis=1, keepdims=True)
        for q, (row_sims, row_ids) in enumerate(zip(sims, ids)):
            scores = np.zeros(len(self.classes))
            first = np.full(len(self.classes), k)
            neighbors = []
            for rank, (sim, i) in enumerate(zip(row_sims, row_ids)):
                if i < 0:
                    continue
                c = int(self.labels[i])
                ballot = 1.0 if self.spec["vote"] == "uniform" else float(sim) + 1.0
                scores[c] += ballot
                first[c] = min(first[c], rank)
                neighbors.append({"id": int(i), "label": self.classes[c], "score": float(sim)})
            total = scores.sum()
            if centre_weight > 0:
                share = scores / total if total > 0 else scores
                blended = (1 - centre_weight) * share + centre_weight * soft[q]
                best = int(np.argmax(blended))
                score = float(blended[best])
            else:
                # Highest vote; ties go to the class whose best neighbour is nearest.
                best = max(range(len(self.classes)), key=lambda c: (scores[c], -first[c]))
                score = float(scores[best] / total) if total > 0 else 0.0
            answers.append({
                "class": best,
                "label": self.classes[best],
                "score": score,
                "neighbors": neighbors,
            })
        return answers
