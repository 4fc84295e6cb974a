from jobstream.cli.app import main

main()
