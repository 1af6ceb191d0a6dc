"""The course's own commands (`course build | reset | progress | grade`); the autograder is `checks`."""
