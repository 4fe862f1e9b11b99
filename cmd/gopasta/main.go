package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gopasta/gopasta/conf"
	// The user namespace join must happen before the Go runtime starts.
	_ "github.com/gopasta/gopasta/link/netns/nsenter"
)

// Environment variables between the front process and the daemon child.
const (
	stageEnv    = "GOPASTA_STAGE"
	stageDaemon = "daemon"
)

func main() {
	os.Exit(run())
}

func run() int {
	prog := filepath.Base(os.Args[0])
	switch os.Getenv(stageEnv) {
	case stageDaemon:
		return daemonMain(prog)
	case stageCleaner:
		return cleanerMain() // cleaner.go
	case stageCommand:
		return commandInitMain(prog) // command.go
	}
	if isCtl(prog, os.Args[1:]) {
		return ctlEntry(prog)
	}
	mode := usageMode(os.Args[0], os.Args[1:])
	cfg, err := conf.Parse(os.Args[0], os.Args[1:])
	switch {
	case errors.Is(err, conf.ErrHelp):
		fmt.Print(conf.Usage(mode))
		if !isPastaName(prog) {
			fmt.Printf("\nRun-time control of a daemon started with -c SOCKET (%s ctl --help):\n"+
				"  %s ctl SOCKET rules|flows|stats|trace|log-level|pcap [ARGUMENTS]\n", prog, prog)
		}
		return 0
	case errors.Is(err, conf.ErrVersion):
		fmt.Printf("gopasta %s\n", conf.Version)
		return 0
	case errors.Is(err, conf.ErrPrintCapabilities):
		fmt.Print(conf.Capabilities)
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %s\n", prog, err)
		return 1
	}
	return front(prog, cfg)
}
