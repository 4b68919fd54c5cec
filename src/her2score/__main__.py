from her2score.cli.main import main

if __name__ == "__main__":
    main()
