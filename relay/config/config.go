// Package config defines mailhop's configuration: the TOML file's shape, its
// defaults, and the checks that run on load. Every problem found names the key
// (and line, where the parser knows it), so an operator can fix the file
// without reading code.
package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Listener modes.
const (
	ModeSubmission  = "submission"  // STARTTLS offered, AUTH required (port 587 style)
	ModeSubmissions = "submissions" // implicit TLS, AUTH required (port 465 style)
	ModeRelay       = "relay"       // port-25 style: trusted networks relay without AUTH
)

// ListenerModes lists the listener modes.
var ListenerModes = []string{ModeSubmission, ModeSubmissions, ModeRelay}

// Route TLS modes.
const (
	RouteTLSStartTLS = "starttls" // STARTTLS required, certificate verified
	RouteTLSImplicit = "tls"      // implicit TLS, certificate verified
	RouteTLSNone     = "none"     // plain text
)

// RouteTLSModes lists the route TLS modes.
var RouteTLSModes = []string{RouteTLSStartTLS, RouteTLSImplicit, RouteTLSNone}

// TLS security levels for delivery by MX (delivery.tls_policy and
// [[tls_policy]] level), with the meanings of Postfix's
// smtp_tls_security_level.
const (
	TLSNone    = "none"    // never STARTTLS
	TLSMay     = "may"     // STARTTLS when offered, certificate not checked; MTA-STS and DANE applied where published
	TLSEncrypt = "encrypt" // TLS required, certificate not checked
	TLSVerify  = "verify"  // TLS required, certificate valid for the MX host name
	TLSDANE    = "dane"    // DANE where TLSA records are published (DNSSEC), else as may
)

// TLSLevels lists the TLS security levels in increasing strictness.
var TLSLevels = []string{TLSNone, TLSMay, TLSEncrypt, TLSVerify, TLSDANE}

// Config is the whole configuration file, after defaults and validation.
type Config struct {
	Hostname string `toml:"hostname"`
	DataDir  string `toml:"data_dir"`
	// Postmaster, when set, is where mail to <Postmaster> and
	// postmaster@hostname goes; such mail is then accepted from anyone
	// (RFC 5321 §4.5.1). Empty: it is relayed like any other address.
	Postmaster string     `toml:"postmaster"`
	TLS        TLS        `toml:"tls"`
	Listener   []Listener `toml:"listener"`
	Policy     Policy     `toml:"policy"`
	User       []User     `toml:"user"`
	Delivery   Delivery   `toml:"delivery"`
	Route      []Route    `toml:"route"`
	// TLSPolicies are the [[tls_policy]] entries: a TLS level per domain.
	TLSPolicies []TLSPolicy `toml:"tls_policy"`
	DKIM        []DKIM      `toml:"dkim"`
	Admin       Admin       `toml:"admin"`
	Log         Log         `toml:"log"`
	Limits      Limits      `toml:"limits"`

	// Path is the file the configuration was loaded from (not a TOML key).
	Path string `toml:"-"`
}

// TLS holds the certificate for the inbound listeners.
type TLS struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// Listener is one [[listener]]: an address and the mode it serves.
type Listener struct {
	Address string `toml:"address"`
	Mode    string `toml:"mode"`
}

// Policy is who may relay and what a message may be.
type Policy struct {
	TrustedNetworks []string `toml:"trusted_networks"`
	MaxMessageSize  int64    `toml:"max_message_size"`
	MaxRecipients   int      `toml:"max_recipients"`

	// Trusted is TrustedNetworks parsed (not a TOML key).
	Trusted []netip.Prefix `toml:"-"`
}

// User is one [[user]] that may authenticate.
type User struct {
	Name         string   `toml:"name"`
	PasswordHash string   `toml:"password_hash"`
	Senders      []string `toml:"senders"`
}

// Delivery configures the outbound side.
type Delivery struct {
	Resolvers            []string   `toml:"resolvers"`
	MXPort               int        `toml:"mx_port"`
	RetryIntervals       []Duration `toml:"retry_intervals"`
	MaxQueueAge          Duration   `toml:"max_queue_age"`
	DelayWarning         Duration   `toml:"delay_warning"`
	Concurrency          int        `toml:"concurrency"`
	PerDomainConcurrency int        `toml:"per_domain_concurrency"`
	// MaxRecipientsPerTransaction is the most recipients one SMTP
	// transaction (MAIL, RCPTs, DATA) to a server carries: a domain's
	// recipients beyond it go in further transactions on the same
	// connection (Postfix's smtp_destination_recipient_limit).
	MaxRecipientsPerTransaction int `toml:"max_recipients_per_transaction"`

	// Per-stage timeouts of the SMTP client (RFC 5321 §4.5.3.2).
	ConnectTimeout  Duration `toml:"connect_timeout"`
	GreetingTimeout Duration `toml:"greeting_timeout"`
	CommandTimeout  Duration `toml:"command_timeout"` // EHLO, MAIL, RCPT, STARTTLS, AUTH
	DataInitTimeout Duration `toml:"data_init_timeout"`
	DataTimeout     Duration `toml:"data_timeout"` // each write of the body (up to 32 KiB)
	DataEndTimeout  Duration `toml:"data_end_timeout"`
	// IdleConnTimeout is how long a connection to a remote host is kept for reuse.
	IdleConnTimeout Duration `toml:"idle_conn_timeout"`

	// TLSPolicy is the TLS level for MX delivery to domains without a
	// [[tls_policy]] entry (TLSMay by default).
	TLSPolicy string `toml:"tls_policy"`
	// ExtraRootsFile names PEM certificates trusted, besides the system
	// roots, for verified TLS (level verify, MTA-STS, routes) and for
	// fetching MTA-STS policies: for testing and private CAs.
	ExtraRootsFile string `toml:"extra_roots_file"`
	// DNSSECTrustedResolver says the resolvers validate DNSSEC and are
	// reached over a trusted path, so their AD bit is believed: only then
	// are TLSA records (DANE) used.
	DNSSECTrustedResolver bool `toml:"dnssec_trusted_resolver"`
	// MTASTSPort is the HTTPS port MTA-STS policies are fetched from (443;
	// tests use another).
	MTASTSPort int `toml:"mta_sts_port"`

	// TLSReports sends RFC 8460 TLS reports: every TLSReportInterval, to
	// each domain that publishes a _smtp._tls TXT record, the TLS outcomes
	// of the sessions to it in that period.
	TLSReports        bool     `toml:"tls_reports"`
	TLSReportInterval Duration `toml:"tls_report_interval"`
	// TLSReportFrom sends the reports (header From, envelope sender and
	// contact-info); "" means postmaster@hostname.
	TLSReportFrom string `toml:"tls_report_from"`
}

// ReportFrom returns the address TLS reports come from.
func (d *Delivery) ReportFrom(hostname string) string {
	if d.TLSReportFrom != "" {
		return d.TLSReportFrom
	}
	return "postmaster@" + hostname
}

// TLSPolicy is one [[tls_policy]]: the TLS level for MX delivery to some
// domains.
type TLSPolicy struct {
	Domains []string `toml:"domains"`
	Level   string   `toml:"level"`
}

// Route sends some domains through a smarthost instead of MX.
type Route struct {
	Domains    []string `toml:"domains"`
	Smarthosts []string `toml:"-"` // smarthost, normalised to a list
	Smarthost  any      `toml:"smarthost"`
	TLS        string   `toml:"tls"`
	CAFile     string   `toml:"ca_file"`
	Username   string   `toml:"username"`
	// Password is the AUTH password. It may be written inline, or read from
	// PasswordFile or the environment variable PasswordEnv (at most one of
	// the three); after loading, Password holds the value whichever was used.
	Password     string `toml:"password"`
	PasswordFile string `toml:"password_file"`
	PasswordEnv  string `toml:"password_env"`
}

// DKIM is one signing key.
type DKIM struct {
	Domain   string `toml:"domain"`
	Selector string `toml:"selector"`
	KeyFile  string `toml:"key_file"`
	// SubDomains: the key also signs mail whose From: is in a subdomain
	// of Domain (d= stays Domain, which DMARC's relaxed alignment accepts).
	SubDomains bool `toml:"sub_domains"`
}

// Admin configures the local control socket and metrics.
type Admin struct {
	Socket         string `toml:"socket"`
	MetricsAddress string `toml:"metrics_address"`
	// SocketGroup, when set, makes the socket mode 0660 with this group, so
	// its members (applications using `mailhop sendmail`) may use it.
	SocketGroup string `toml:"socket_group"`
}

// LogFormats and LogLevels list the values of log.format and log.level.
var (
	LogFormats = []string{"text", "json"}
	LogLevels  = []string{"debug", "info", "warn", "error"}
)

// Log configures log/slog output.
type Log struct {
	Format string `toml:"format"`
	Level  string `toml:"level"`
}

// Limits bounds what one client may use of the inbound server.
type Limits struct {
	MaxConnections      int      `toml:"max_connections"`        // in total
	MaxConnectionsPerIP int      `toml:"max_connections_per_ip"` // per client address
	IdleTimeout         Duration `toml:"idle_timeout"`           // between commands
	SessionTimeout      Duration `toml:"session_timeout"`        // whole connection
	MaxLineLength       int      `toml:"max_line_length"`        // bytes, text lines in DATA
	MaxErrors           int      `toml:"max_errors"`             // then 421 and disconnect
	MaxHeaderSize       int      `toml:"max_header_size"`        // bytes of a message's header block
	// MaxAuthFailures failed AUTHs from one address (IPv6: one /64) get
	// it refused at connect for AuthBlockTime.
	MaxAuthFailures int      `toml:"max_auth_failures"`
	AuthBlockTime   Duration `toml:"auth_block_time"`
	// ShutdownTimeout is how long SMTP transactions and deliveries may take
	// to finish after SIGTERM before they are cut off.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// Duration is a time.Duration written in TOML as a string such as "5m".
type Duration struct{ time.Duration }

// UnmarshalText parses a duration such as "90s", "5m" or "1h30m".
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write a number with a unit, like \"30s\", \"5m\", \"2h\")", text)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration the way UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}
