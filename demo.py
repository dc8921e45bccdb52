#!/usr/bin/env python
"""Label the actions in your own video: ``demo.py --config-file F --input VIDEO --output OUT.mp4 MODEL.WEIGHT ckpt``.

See ``python demo.py --help`` and the README section "Run on your own video".
"""

from stmixer.engine.demo import main

if __name__ == "__main__":
    main()
