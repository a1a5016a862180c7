"""End-to-end recipes that turn a real target into a trained PARD draft (applications of the library).

* ``prompts``: a training prompt set of our own, from templates; ``self_instruct``: prompts the target
  writes itself; ``distill``: the target's answers to them, as chat records;
* ``smollm2``: the SmolLM2-135M-Instruct recipe, one module per stage (data, train, evaluate, export).
"""
