"""`python -m train.generate [overrides]`: see train.generate.run."""
from train.generate.run import main

if __name__ == "__main__":
    main()
