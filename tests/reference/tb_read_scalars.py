"""Reads every scalar in a TensorBoard event directory with TensorBoard's own loader (which checks
the TFRecord CRCs) and prints one JSON line per scalar: {"tag", "step", "value"}."""
import json
import sys

from tensorboard.backend.event_processing import event_file_loader


def main(path):
    loader = event_file_loader.EventFileLoader(path, detect_file_replacement=False)
    versions = []
    for event in loader.Load():
        if event.HasField("file_version"):
            versions.append(event.file_version)
        for value in event.summary.value:
            # The loader converts simple_value into a scalar tensor (data-compat).
            scalar = value.simple_value if value.HasField("simple_value") else None
            if scalar is None:
                from tensorboard.util import tensor_util
                scalar = float(tensor_util.make_ndarray(value.tensor))
            print(json.dumps({"tag": value.tag, "step": event.step, "value": scalar}))
    print(json.dumps({"file_version": versions}))


if __name__ == "__main__":
    main(sys.argv[1])
