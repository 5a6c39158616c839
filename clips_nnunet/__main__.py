import sys

from clips_nnunet.cli import main

sys.exit(main())
