"""Builds and loads every CPU kernel, and says which are ready (setup.sh runs this).

python -m videogen.kernels
"""

import sys

from videogen.kernels import group_norm, onednn_conv


def main() -> None:
    for name, kernel in (("oneDNN convolution", onednn_conv), ("group-norm kernel", group_norm)):
        reason = kernel.load()
        if reason is None:
            print(f"{name} ready: {kernel.library_path()}")
        else:
            print(f"{name} not built: {reason}", file=sys.stderr)
            print(f"videogen runs {name}'s operation on XLA (slower on CPU); nothing else changes.")


if __name__ == "__main__":
    main()
