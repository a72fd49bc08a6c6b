"""Check the mapping of the packaged EfficientNet-Lite0 ImageNet weights (train/lite0_weights.py): top-1/top-5
ImageNet accuracy on N of the kit's ImageNet sample photos (their synset is in the manifest's `group`).

    python tools/lite0_imagenet_check.py ../shared/data/kit 100
"""

import sys

from train.lite0_weights import imagenet_check

if __name__ == "__main__":
    print(imagenet_check(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32))
