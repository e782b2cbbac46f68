"""The engram-ff service: command line, configuration, scheduling, signals and systemd notify."""
