"""``python -m maskfm.bench +experiment=NAME``: see :mod:`maskfm.bench`."""

from maskfm.bench import main

if __name__ == "__main__":
    main()
