"""What the trainer and the client share, with no TensorFlow: the serving contract of an
exported version (`digits.contract`) and the MNIST idx file reader (`digits.idx`).

numpy and the standard library only, so the client installs anywhere `requests` and
`numpy` do, and the trainer and the client can never disagree about either.
"""
