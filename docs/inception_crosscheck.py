"""Cross-check train/inception.py against torch-fidelity's independent Inception (same graph,
same state-dict keys), with seeded He-initialised weights: the real weights cannot be fetched
here. torch-fidelity needs torchvision, which this project does without, so only its Inception
module is loaded, from an unpacked wheel:

    .venv/bin/python -m pip download torch-fidelity==0.4.0 --no-deps -d build/tf
    (cd build/tf && unzip -q -o torch_fidelity-*.whl)
    .venv/bin/python docs/inception_crosscheck.py build/tf
"""

from __future__ import annotations

import pathlib
import sys
import types

import torch

from ganserve.train.inception import FIDInception


def main(unpacked: pathlib.Path) -> None:
    package = types.ModuleType("torch_fidelity")  # skip its __init__, which wants torchvision
    package.__path__ = [str(unpacked / "torch_fidelity")]
    sys.modules["torch_fidelity"] = package
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    ours = FIDInception()
    for m in ours.modules():  # keep activations alive through ~90 layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.normal_(0, 0.1)
    weights = unpacked / "he_inception.pth"
    torch.save(ours.state_dict(), weights)
    # torch-fidelity loads the file with strict key and shape checks.
    theirs = FeatureExtractorInceptionV3(
        "inception",
        ["2048", "logits"],
        feature_extractor_weights_path=str(weights),
        feature_extractor_internal_dtype="float64",
    )
    ours = ours.double().eval()
    images = torch.randint(0, 256, (4, 3, 299, 299), dtype=torch.uint8)
    with torch.no_grad():
        features, logits = theirs(images)
        # torch-fidelity's input scaling; at 299x299 its resize is the identity.
        mine = ours((images.double() - 128) / 128)
    for name, a, b in (("pool3", features, mine), ("logits", logits, ours.fc(mine))):
        diff = ((a.double() - b).abs().max() / a.abs().max()).item()
        print(f"{name}: max |difference| / max |value| = {diff:.1e}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
