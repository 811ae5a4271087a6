"""``python -m wsi_saliency.synthetic FOLDER``: see :mod:`wsi_saliency.synthetic.sample`."""

import sys

from wsi_saliency.synthetic.sample import main

sys.exit(main())
