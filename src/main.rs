fn main() -> std::process::ExitCode {
    vallignus::cli::main()
}
