from agent.cli.main import cli

cli(prog_name="stalela")
