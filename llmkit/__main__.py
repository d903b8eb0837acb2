from llmkit.entry import main

main()
