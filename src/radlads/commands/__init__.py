"""One module per `radlads` subcommand.

Each exposes `add_arguments(parser)` and `run(args) -> int`: it parses and checks its flags, makes
one call into the library module that does the job, and prints or writes what that call returns.
`radlads.cli` imports only the chosen command's module, so `radlads --help` needs no torch.
"""
