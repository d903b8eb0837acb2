"""Meta's LLaMA layout (``consolidated.NN.pth`` + ``params.json``): names and the rotary permutation
(``names``), ``params.json`` (``params``), the joining reader (``source``), the ``meta-pth`` sink (``sink``),
the folder checks (``checks``) and the folder seen as a Hugging Face model (``as_hf``).
"""
