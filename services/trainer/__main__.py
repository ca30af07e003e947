from loopwise.trainer.app import main

main()
