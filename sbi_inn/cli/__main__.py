import sys

from sbi_inn.cli import main

sys.exit(main())
