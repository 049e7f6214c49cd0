// Package earlysignal catches the signals that stop or reload `mailhop
// serve` as soon as the program's own code runs: its init runs before those
// of the heavier packages (metrics, protobuf, DNS: several milliseconds of
// a start), where a signal.Notify once the configuration was loaded came so
// late that a SIGTERM in the first milliseconds of a start killed the
// process (exit 143) instead of stopping it cleanly. Other commands
// (sendmail, queue, ...) keep the default: a signal ends them.
//
// What is left is the start of the Go runtime itself, between exec and
// the first package's init (a millisecond or two), which no Go program
// covers.
package earlysignal

import (
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// Signals are what serve handles: SIGTERM and SIGINT stop, SIGHUP reloads.
var Signals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP}

var serveSigs chan os.Signal

func init() {
	if isServe(os.Args) {
		serveSigs = make(chan os.Signal, 4)
		signal.Notify(serveSigs, Signals...)
	}
}

// isServe reports whether args (os.Args) run `mailhop serve`, as the
// command's dispatch reads them.
func isServe(args []string) bool {
	if len(args) < 2 {
		return false
	}
	switch filepath.Base(args[0]) {
	case "sendmail", "mailq", "newaliases":
		return false
	}
	return args[1] == "serve"
}

// Serve returns the channel Signals arrive on for serve: the one caught
// since init (holding what arrived meanwhile), or, when this process was
// not started as `mailhop serve` (a test calling the command), a new one.
// Signals stay caught until the process exits.
func Serve() <-chan os.Signal {
	if serveSigs == nil {
		serveSigs = make(chan os.Signal, 4)
		signal.Notify(serveSigs, Signals...)
	}
	return serveSigs
}
