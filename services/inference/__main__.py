from loopwise.inference.app import main

main()
