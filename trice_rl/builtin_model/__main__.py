from trice_rl.builtin_model.cli import main

main()
