from loopwise.collector.app import main

main()
