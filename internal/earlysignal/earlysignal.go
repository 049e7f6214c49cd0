// Package earlysignal catches the signals that stop or reload `mailhop
// serve` as soon as the program's own code runs: its init runs before those
// of the heavier packages (metrics, protobuf, DNS: several milliseconds of
// a start), where a signal.Notify once the configuration was loaded came so
// late that a SIGTERM in the first milliseconds of a start killed the
// process (exit 143) instead of stopping it cleanly. Other commands
// (sendmail, queue, ...) keep the default: a signal ends them.
//
// Go runs a package's init once those of its imports have run, the ready
// ones in the order of their import paths: this package imports only os,
// os/signal and syscall, so that its init comes right after theirs, before
// protobuf's, the metrics' and DNS's. What is left is the start of the Go
// runtime itself and of those few standard packages (a millisecond or two),
// which no Go program covers.
package earlysignal

import (
	"os"
	"os/signal"
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
	switch base(args[0]) {
	case "sendmail", "mailq", "newaliases":
		return false
	}
	return args[1] == "serve"
}

// base is filepath.Base of a program's path on Unix (its last element). Not
// filepath itself: an init runs once those of every package it imports
// have, and path/filepath's comes late (after protobuf's and most of the
// metrics'), so importing it made this init wait some 2-4 ms of a start.
func base(p string) string {
	for len(p) > 1 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	for i := len(p) - 2; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
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
