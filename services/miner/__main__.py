from loopwise.miner.app import main

main()
