"""The command line, `pretrainflow`: argument parsing, one handler per command, the messages a user
sees, and the servers of `pretrainflow ui`.
"""
