"""A small real corpus for training tests: the first lines of People's Daily (January 1998),
a byte-level BPE tokenizer trained on them, and prepared token shards."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from duplexlm.data import prepare
from duplexlm.tokenizer import save_tokenizer, train_tokenizer
from duplexlm.train.config import load_train_config
from duplexlm.train.loop import pretrain

from ..conftest import peoples_daily_lines


@pytest.fixture(scope="session")
def pd_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pd")
    lines = peoples_daily_lines(1500)
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer(lines, kind="bpe", vocab_size=1000)
    save_tokenizer(tok, root / "tok")
    prepare([str(root / "corpus.txt")], root / "data", root / "tok", val_fraction=0.05, seed=1, workers=1,
            progress=False)
    return root


@pytest.fixture(scope="session")
def pd_data(pd_corpus) -> Path:
    return pd_corpus / "data"


@pytest.fixture(scope="session")
def pd_data_words(pd_corpus) -> Path:
    """The same corpus and tokenizer, prepared with word boundaries (for whole-word masking)."""
    out = pd_corpus / "data_words"
    prepare([str(pd_corpus / "corpus.txt")], out, pd_corpus / "tok", val_fraction=0.05, seed=1, workers=1,
            word_boundaries=True, progress=False)
    return out


# a tiny encoder's settings, shared by the tests that start from a pretrained run or its checkpoints
TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.seq_len=48", "batch_size=8",
        "eval_every=2", "log_every=1", "progress=false", "optim.warmup_steps=1", "precision=fp32"]


@pytest.fixture(scope="module")
def mlm_run(pd_data, tmp_path_factory) -> Path:
    """A tiny masked-LM encoder pretrained 4 steps, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("mlm") / "run"
    pretrain(load_train_config(None, [f"data.path={pd_data}", f"out_dir={out}", "objective=mlm",
                                      "model.preset=bert-tiny", *TINY, "max_steps=4", "save_every=2"]))
    return out


def finetune_one_and_two_processes(tmp_path: Path, common: list[str], one_batch: int, two_batch: int) -> tuple[Path, Path]:
    """`duplex finetune COMMON` in one process with batches of ``one_batch`` (out_dir tmp_path/one), and
    under torchrun in 2 gloo processes of ``two_batch`` each (tmp_path/two) → the two run directories."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "duplexlm.cli", "finetune", f"out_dir={one}", *common, f"batch_size={one_batch}"],
                   check=True, capture_output=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "duplexlm.cli", "finetune",
                          f"out_dir={two}", *common, f"batch_size={two_batch}"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return one, two
