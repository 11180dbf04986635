"""dwakd: cross-tokenizer knowledge distillation for causal language models.

Layers, with data flowing one way (a lower layer never imports a higher one):
``config -> data -> align -> methods -> train -> eval -> cli``; models and tokenizers are
loaded in :mod:`dwakd.models` only.
"""

__version__ = "0.1.0"
