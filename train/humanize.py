"""`python -m train.humanize checkpoint=… input=part.mid output=human.mid`: see train.generate.humanize."""
from train.generate.humanize import main

if __name__ == "__main__":
    main()
