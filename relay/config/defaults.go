package config

import (
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Default values of settings the file leaves out.
const (
	DefaultDataDir              = "./data"
	DefaultMaxMessageSize       = 25 << 20 // 26214400 bytes
	DefaultMaxRecipients        = 100
	DefaultMXPort               = 25
	DefaultConcurrency          = 100
	DefaultPerDomainConcurrency = 10
	// DefaultMaxRecipientsPerTransaction is Postfix's
	// default_destination_recipient_limit; RFC 5321 §4.5.3.1.8 only
	// promises that servers take 100.
	DefaultMaxRecipientsPerTransaction = 50
	DefaultMaxConnections              = 2000
	DefaultMaxConnectionsPerIP         = 50
	DefaultMaxLineLength               = 998 // RFC 5322 §2.1.1, without CRLF
	DefaultMaxErrors                   = 10
	DefaultMaxAuthFailures             = 10
	DefaultMaxHeaderSize               = 102400 // Postfix's header_size_limit
	DefaultAdminSocketName             = "admin.sock"
	DefaultMTASTSPort                  = 443
)

// DefaultTrustedNetworks are the networks that may relay without AUTH when
// policy.trusted_networks is absent: the local host only.
var DefaultTrustedNetworks = []string{"127.0.0.0/8", "::1/128"}

// DefaultRetryIntervals is the retry schedule when delivery.retry_intervals
// is absent; the last interval repeats until max_queue_age.
var DefaultRetryIntervals = []time.Duration{
	time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 4 * time.Hour,
}

// defaults is the Config a file is decoded over: every key the file leaves
// out keeps its value from here. (An explicit empty array, such as
// trusted_networks = [], replaces the default with nothing.)
func defaults() *Config {
	host, _ := os.Hostname() // empty on failure; validate then asks for hostname
	retry := make([]Duration, len(DefaultRetryIntervals))
	for i, d := range DefaultRetryIntervals {
		retry[i] = Duration{d}
	}
	return &Config{
		Hostname: host,
		DataDir:  DefaultDataDir,
		Policy: Policy{
			TrustedNetworks: append([]string(nil), DefaultTrustedNetworks...),
			MaxMessageSize:  DefaultMaxMessageSize,
			MaxRecipients:   DefaultMaxRecipients,
		},
		Delivery: Delivery{
			MXPort:                      DefaultMXPort,
			RetryIntervals:              retry,
			MaxQueueAge:                 Duration{120 * time.Hour},
			DelayWarning:                Duration{4 * time.Hour},
			Concurrency:                 DefaultConcurrency,
			PerDomainConcurrency:        DefaultPerDomainConcurrency,
			MaxRecipientsPerTransaction: DefaultMaxRecipientsPerTransaction,
			// RFC 5321 §4.5.3.2 minimums, except connect (the RFC sets none).
			ConnectTimeout:  Duration{30 * time.Second},
			GreetingTimeout: Duration{5 * time.Minute},
			CommandTimeout:  Duration{5 * time.Minute},
			DataInitTimeout: Duration{2 * time.Minute},
			DataTimeout:     Duration{3 * time.Minute},
			DataEndTimeout:  Duration{10 * time.Minute},
			IdleConnTimeout: Duration{30 * time.Second},
			TLSPolicy:       TLSMay,
			MTASTSPort:      DefaultMTASTSPort,

			// RFC 8460 TLS reports, once a day.
			TLSReports:        true,
			TLSReportInterval: Duration{24 * time.Hour},
		},
		Log: Log{Format: "text", Level: "info"},
		Limits: Limits{
			MaxConnections:      DefaultMaxConnections,
			MaxConnectionsPerIP: DefaultMaxConnectionsPerIP,
			IdleTimeout:         Duration{5 * time.Minute},
			SessionTimeout:      Duration{30 * time.Minute},
			MaxLineLength:       DefaultMaxLineLength,
			MaxErrors:           DefaultMaxErrors,
			MaxAuthFailures:     DefaultMaxAuthFailures,
			AuthBlockTime:       Duration{10 * time.Minute},
			MaxHeaderSize:       DefaultMaxHeaderSize,
			ShutdownTimeout:     Duration{30 * time.Second},
		},
	}
}

// resolvePaths makes relative file names relative to dir, the directory of
// the configuration file, so the relay finds them whatever its working
// directory.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.Admin.Socket)
	if c.Admin.Socket == "" && c.DataDir != "" {
		c.Admin.Socket = filepath.Join(c.DataDir, DefaultAdminSocketName)
	}
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	abs(&c.Delivery.ExtraRootsFile)
	for i := range c.Route {
		abs(&c.Route[i].CAFile)
		abs(&c.Route[i].PasswordFile)
	}
	for i := range c.DKIM {
		abs(&c.DKIM[i].KeyFile)
	}
}

// finish fills defaults that depend on other values and normalises case:
// of domains, and of enumerated values ("Submission", "INFO"). Domains of
// routes, TLS policies and DKIM keys written in Unicode become A-labels, the
// form delivery looks recipient domains up by and DKIM's d= is written in.
func (c *Config) finish() {
	c.Hostname = strings.TrimSuffix(c.Hostname, ".")
	enum(&c.Log.Format, LogFormats)
	enum(&c.Log.Level, LogLevels)
	enum(&c.Delivery.TLSPolicy, TLSLevels)
	for i := range c.Listener {
		enum(&c.Listener[i].Mode, ListenerModes)
	}
	for i := range c.Route {
		r := &c.Route[i]
		if r.TLS == "" {
			r.TLS = RouteTLSStartTLS
		}
		enum(&r.TLS, RouteTLSModes)
		for j, d := range r.Domains {
			r.Domains[j] = strings.ToLower(asciiDomain(d))
		}
	}
	for i := range c.DKIM {
		c.DKIM[i].Domain = strings.ToLower(asciiDomain(c.DKIM[i].Domain))
	}
	for i := range c.TLSPolicies {
		enum(&c.TLSPolicies[i].Level, TLSLevels)
		for j, d := range c.TLSPolicies[i].Domains {
			c.TLSPolicies[i].Domains[j] = strings.ToLower(asciiDomain(d))
		}
	}
}

// enum sets *v to the value of allowed it equals without case; a value none
// equals is left as written, for validate to report.
func enum(v *string, allowed []string) {
	for _, a := range allowed {
		if strings.EqualFold(*v, a) {
			*v = a
			return
		}
	}
}
