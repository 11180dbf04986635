"""Models and tokenizers are loaded here and nowhere else.

- :func:`load_model` / :func:`load_tokenizer`: hub name, local directory, or built-in alias.
- :func:`vocab_facts`: tokenizer length vs logits width, special ids, chat template, padding side.
- :func:`build_student`: a random-init small causal LM plus a tokenizer trained by dwakd.
"""

from dwakd.models.aliases import ALIASES, resolve_alias
from dwakd.models.loading import load_model, load_tokenizer
from dwakd.models.student import StudentSpec, build_student, train_tokenizer
from dwakd.models.vocab import VocabFacts, vocab_facts

__all__ = [
    "ALIASES",
    "StudentSpec",
    "VocabFacts",
    "build_student",
    "load_model",
    "load_tokenizer",
    "resolve_alias",
    "train_tokenizer",
    "vocab_facts",
]
