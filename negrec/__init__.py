"""negrec: predict the items a user will dislike over the next days.

Stages (data flows one way): data -> encode -> rqvae -> tokenizer -> llm -> rewards -> train -> eval.
`rewards` sits beside `train` and shares its matching code with `eval`.
"""
__version__ = "0.1.0"
