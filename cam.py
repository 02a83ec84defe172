import sys

from pytorch_cam.cli import main

if __name__ == "__main__":
    sys.exit(main())
