// Command mailhop is an SMTP relay: it accepts mail from clients and
// applications, queues it durably, and delivers it to each recipient
// domain's mail servers (or through a smarthost), retrying until delivered,
// bounced or expired.
//
// This file only dispatches subcommands; the work is in relay/ and queue/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/dkimsign"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `mailhop — an SMTP relay

Usage:
  mailhop serve --config FILE           run the relay in the foreground (logs to stderr)
  mailhop check-config --config FILE    check a configuration; exit 1 with every problem found
  mailhop passwd                        read a password on stdin (a terminal: asked twice,
                                        not echoed), print its bcrypt hash
  mailhop queue list [--json] [filters] list queued mail
  mailhop queue show ID                 one message, with every recipient
  mailhop queue flush [--domain D]      retry now
  mailhop queue hold|release|delete|bounce ID
  mailhop sendmail [-t] [-i] [-f FROM] [-F NAME] [RCPT...]
                                        send the message on stdin (also as a
                                        symlink named sendmail)
  mailhop dkim keygen --domain D --selector S --out FILE [--type rsa|ed25519] [--bits 2048]
                                        write a DKIM key, print its DNS record
  mailhop version

Commands that need the configuration take --config FILE; without it they use
$MAILHOP_CONFIG, then /etc/mailhop/config.toml.
`

// Exit codes for our own commands (sendmail uses sysexits).
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// flagsFailed is the exit status after a command's flags did not parse:
// 0 for -h/--help (the flag package printed the usage, as asked), else a
// usage error.
func flagsFailed(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		// Installed as /usr/sbin/sendmail (a symlink): sendmail's command
		// line; as mailq and newaliases, its -bp and -bi.
		switch filepath.Base(args[0]) {
		case "sendmail":
			return cmdSendmail(args[1:], stdin, stdout, stderr)
		case "mailq":
			return cmdSendmail(append([]string{"-bp"}, args[1:]...), stdin, stdout, stderr)
		case "newaliases":
			return cmdSendmail([]string{"-bi"}, stdin, stdout, stderr)
		}
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "serve":
		return cmdServe(rest, stderr)
	case "check-config":
		return cmdCheckConfig(rest, stdout, stderr)
	case "passwd":
		return cmdPasswd(rest, stdin, stdout, stderr)
	case "queue":
		return cmdQueue(rest, stdout, stderr)
	case "sendmail":
		return cmdSendmail(rest, stdin, stdout, stderr)
	case "dkim":
		return cmdDKIM(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "mailhop %s\n", version)
		return exitOK
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "mailhop: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments (`queue show ID --config F`), returning the
// positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// configPath returns the configuration file to use.
func configPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("MAILHOP_CONFIG"); env != "" {
		return env
	}
	return "/etc/mailhop/config.toml"
}

// loadConfig loads the configuration, printing every problem on failure.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, strings.TrimRight(ce.Error(), "\n"))
		} else {
			fmt.Fprintf(stderr, "mailhop: %v\n", err)
		}
		return nil, false
	}
	return cfg, true
}

// exitHelped is configCommand's code after -h/--help: nothing more to do,
// and the process exits 0.
const exitHelped = -1

// configCommand parses the flags of a command that takes only --config
// and loads the configuration; a non-zero code is the exit status
// (exitHelped: 0, the usage was printed).
func configCommand(name string, args []string, stderr io.Writer) (cfg *config.Config, path string, code int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "configuration file")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if flagsFailed(err) == exitOK {
			return nil, "", exitHelped
		}
		return nil, "", exitUsage
	}
	if len(pos) > 0 {
		// Taken silently, the file named would not be the one used.
		fmt.Fprintf(stderr, "mailhop %s: unexpected argument %q (name the file with --config FILE)\n", name, pos[0])
		return nil, "", exitUsage
	}
	path = configPath(*cfgFlag)
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return nil, path, exitFail
	}
	return cfg, path, exitOK
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	cfg, path, code := configCommand("check-config", args, stderr)
	if code != exitOK {
		return max(code, exitOK)
	}
	// Keys are checked by loading them, as serve does.
	if _, err := dkimsign.New(cfg.DKIM); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return exitFail
	}
	abs, _ := filepath.Abs(path)
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", path, w)
	}
	fmt.Fprintf(stdout, "%s: OK\n", abs)
	return exitOK
}
