package main

// mailhop sendmail's command line: its options, the configuration it reads
// (shared with mailhop queue) and its exit status. What the invocation
// means is relay/sendmail's.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/mailhop/mailhop/relay/admin"
	"github.com/mailhop/mailhop/relay/config"
	"github.com/mailhop/mailhop/relay/msglimit"
	"github.com/mailhop/mailhop/relay/sendmail"
)

const sendmailUsage = `usage: mailhop sendmail [-t] [-i] [-f FROM] [-F NAME] [-C FILE] [--config FILE] [RCPT...] < message
  -t       take recipients from To, Cc and Bcc (Resent-To, -Cc, -Bcc when there are
           Resent- fields; Bcc and Resent-Bcc are removed); RCPT arguments are added
  -i, -oi  a line with a single dot does not end the message
  -f FROM  envelope sender (default: your login name @ hostname); -f '<>' is the null sender
  -F NAME  your full name, for the From: header mailhop adds when the message has none
  -N DSN   delivery status notifications: never, or a list of success, failure, delay
  -R RET   what a bounce returns: full (the message) or hdrs (its header)
  -V ENVID an envelope identifier, quoted in delivery status notifications
  -v       say what happened
  -bs      speak SMTP on stdin and stdout (what Symfony Mailer and Laravel run)
  -bp      list the queue, as mailq (mailhop queue list)
  -bi, -I  rebuild the aliases, as newaliases: there are none, so nothing to do
Accepted and ignored, for compatibility: -bm -m -n -oXXX -odb -odi -oem -oep -B T -X F -L T -h N -U -G
`

// sendmailOpts is the parsed command line: what relay/sendmail is asked to
// do, and what cmdSendmail does itself (-bp, -bi, the configuration file).
type sendmailOpts struct {
	sendmail.Options
	config  string
	mailq   bool // -bp: list the queue (mailhop queue list)
	aliases bool // -bi, -I: rebuild the aliases (there are none)
	help    bool // --help: print the usage
}

// parseSendmailArgs reads sendmail's getopt-style options: letters may be
// grouped (-ti), values attached (-fme@x) or separate (-f me@x).
func parseSendmailArgs(args []string) (*sendmailOpts, error) {
	o := &sendmailOpts{}
	// Options whose value is the next argument when not attached.
	withValue := "fFrCBNRVXLhOp"
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			o.Rcpts = append(o.Rcpts, args[i+1:]...)
			break
		}
		if a == "--config" || a == "-config" {
			if i+1 >= len(args) {
				return nil, sendmail.Errorf(sendmail.ExUsage, "--config needs a file")
			}
			i++
			o.config = args[i]
			continue
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			o.config = v
			continue
		}
		if a == "--help" {
			o.help = true
			continue
		}
		if len(a) < 2 || a[0] != '-' {
			o.Rcpts = append(o.Rcpts, a)
			continue
		}
		if strings.HasPrefix(a, "--") {
			return nil, sendmail.Errorf(sendmail.ExUsage, "unknown option %s", a)
		}
		switch a[1] {
		case 'o':
			// -oi is -i; every other -oX is a sendmail.cf option (-oem,
			// -odb, -oQ/path, -oL9 ...) that means nothing here.
			if a == "-oi" {
				o.NoDot = true
			} else if a == "-o" {
				i++ // "-o X" form
			}
			continue
		case 'b':
			switch a {
			case "-bm":
				continue
			case "-bs":
				o.SMTP = true
				continue
			case "-bp":
				o.mailq = true
				continue
			case "-bi":
				o.aliases = true
				continue
			}
			return nil, sendmail.Errorf(sendmail.ExUsage, "%s is not supported (only -bm, deliver mail; -bs, SMTP; -bp, the queue)", a)
		case 'q':
			return nil, sendmail.Errorf(sendmail.ExUsage, "%s is not supported: use `mailhop queue flush`", a)
		case 'I':
			o.aliases = true
			continue
		case 'd', 'e':
			continue // debugging, error modes: ignored
		}
		// A group of letters, possibly ending in one that takes a value.
	letters:
		for j := 1; j < len(a); j++ {
			c := a[j]
			if strings.IndexByte(withValue, c) >= 0 {
				v := a[j+1:]
				if v == "" {
					if i+1 >= len(args) {
						return nil, sendmail.Errorf(sendmail.ExUsage, "-%c needs a value", c)
					}
					i++
					v = args[i]
				}
				switch c {
				case 'f', 'r':
					o.From, o.FromSet = v, true
				case 'F':
					o.FullName = v
				case 'C':
					o.config = v
				case 'N':
					o.Notify = v
				case 'R':
					o.Ret = v
				case 'V':
					o.EnvID = v
				}
				break letters
			}
			switch c {
			case 't':
				o.Extract = true
			case 'i':
				o.NoDot = true
			case 'v':
				o.Verbose = true
			case 'm', 'n', 'U', 'G', 'A', 'c', 'x':
				// me-too, no aliasing, initial submission, gateway ...: ignored
			default:
				return nil, sendmail.Errorf(sendmail.ExUsage, "unknown option -%c", c)
			}
		}
	}
	if err := admin.CheckDSN(o.Notify, o.Ret, o.EnvID); err != nil {
		return nil, sendmail.Errorf(sendmail.ExUsage, "-N/-R/-V: %v", err)
	}
	return o, nil
}

// clientConfig is the part of the configuration that sendmail and the queue
// commands need. It is read leniently (unknown and invalid keys elsewhere
// are the relay's business), so a user who may not read the TLS key or a
// password file, or lacks a password_env variable, can still use them.
type clientConfig struct {
	Hostname string `toml:"hostname"`
	DataDir  string `toml:"data_dir"`
	Admin    struct {
		Socket string `toml:"socket"`
	} `toml:"admin"`
	Policy struct {
		MaxMessageSize int64 `toml:"max_message_size"`
	} `toml:"policy"`
	Limits struct {
		MaxLineLength int `toml:"max_line_length"`
		MaxHeaderSize int `toml:"max_header_size"`
	} `toml:"limits"`
}

// limits are the limits SMTP applies to a message, as this configuration
// sets them; a message left in the pickup directory must meet them.
func (c *clientConfig) limits() msglimit.Limits {
	return msglimit.Limits{MaxMessageSize: c.Policy.MaxMessageSize, MaxLineLength: c.Limits.MaxLineLength,
		MaxHeaderSize: c.Limits.MaxHeaderSize}
}

// sendmail is what relay/sendmail needs of c.
func (c *clientConfig) sendmail() *sendmail.Config {
	return &sendmail.Config{Hostname: c.Hostname, DataDir: c.DataDir, Socket: c.Admin.Socket, Limits: c.limits()}
}

func loadClientConfig(path string) (*clientConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, sendmail.Errorf(sendmail.ExNoPerm, "cannot read the configuration %s: %v (ask to be added to the relay's admin.socket_group, which may read it)", path, err)
		}
		return nil, sendmail.Errorf(sendmail.ExConfig, "cannot read the configuration %s: %v (set --config, -C or $MAILHOP_CONFIG)", path, err)
	}
	var c clientConfig
	if _, err := toml.Decode(string(data), &c); err != nil {
		return nil, sendmail.Errorf(sendmail.ExConfig, "configuration %s: %v (`mailhop check-config` says more)", path, err)
	}
	dir := filepath.Dir(path)
	if c.DataDir == "" {
		c.DataDir = config.DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		c.DataDir = filepath.Join(dir, c.DataDir)
	}
	if c.Admin.Socket == "" {
		c.Admin.Socket = filepath.Join(c.DataDir, config.DefaultAdminSocketName)
	} else if !filepath.IsAbs(c.Admin.Socket) {
		c.Admin.Socket = filepath.Join(dir, c.Admin.Socket)
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	c.Hostname = strings.TrimSuffix(c.Hostname, ".")
	if c.Policy.MaxMessageSize <= 0 {
		c.Policy.MaxMessageSize = config.DefaultMaxMessageSize
	}
	if c.Limits.MaxLineLength <= 0 {
		c.Limits.MaxLineLength = config.DefaultMaxLineLength
	}
	if c.Limits.MaxHeaderSize <= 0 {
		c.Limits.MaxHeaderSize = config.DefaultMaxHeaderSize
	}
	return &c, nil
}

func cmdSendmail(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseSendmailArgs(args)
	switch {
	case err != nil:
	case o.help:
		fmt.Fprint(stdout, sendmailUsage)
		return sendmail.ExOK
	case o.aliases:
		// Package scripts run newaliases after installing an MTA; a
		// relay-only one has nothing to rebuild (as dma and ssmtp).
		fmt.Fprintln(stderr, "mailhop sendmail: mailhop has no aliases: nothing to rebuild")
		return sendmail.ExOK
	case o.mailq:
		list := []string{"list"}
		if o.config != "" {
			list = append(list, "--config", o.config)
		}
		return cmdQueue(list, stdout, stderr)
	default:
		var cfg *clientConfig
		if cfg, err = loadClientConfig(configPath(o.config)); err == nil {
			err = sendmail.Send(cfg.sendmail(), &o.Options, stdin, stdout)
		}
	}
	if err == nil {
		return sendmail.ExOK
	}
	var se *sendmail.Error
	if !errors.As(err, &se) {
		se = &sendmail.Error{Code: sendmail.ExSoftware, Msg: err.Error()}
	}
	fmt.Fprintf(stderr, "mailhop sendmail: %s\n", se.Msg)
	if se.Code == sendmail.ExUsage {
		fmt.Fprint(stderr, sendmailUsage)
	}
	return se.Code
}
