"""HTML pages with audio previews and piano rolls: `write_generate_page` (called by
`python -m train.generate`), `write_eval_page` (`python -m train.evaluate`); audio in `audio.py`,
the dvc `render` stage in `render.py`."""
from train.report.pages import write_eval_page, write_generate_page

__all__ = ["write_eval_page", "write_generate_page"]
