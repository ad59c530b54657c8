"""`python -m train.tune [overrides]`: see train.tune.study."""
from train.tune.study import main

if __name__ == "__main__":
    main()
