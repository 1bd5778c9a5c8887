"""Run under torchrun by tests/test_device.py: each rank asks a StopVote once per step, as the loop
does, with a flag that turns true at step 3 on rank 0 and at step 5 on rank 1 (rank 1 also runs
slower), then settles the vote in flight; rank 0 prints JSON of every rank's answers."""
import json
import sys
import time

from pipeline.train import distributed as D

TURNS = {0: 3, 1: 5}

dist = D.init()
vote = dist.vote()
answers = []
for step in range(8):
    time.sleep(0.05 * dist.rank)
    answers.append(vote(step >= TURNS[dist.rank]))
answers.append(vote.settle())
everyone = dist.gather(answers)
if dist.main:
    sys.__stdout__.write(json.dumps(everyone) + "\n")
D.shutdown(dist)
