package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailhop/mailhop/dnsmx"
	"github.com/mailhop/mailhop/relay/dkimsign/dkimkey"
)

// maxFileSize bounds every file the configuration points at (keys,
// certificates, password files): they are small, and a mistake such as a path
// into /proc must not make the check read forever.
const maxFileSize = 1 << 20

// validate checks every value, records each problem under its key, and fills
// the derived fields (Policy.Trusted, Route.Smarthosts, Route.Password from a
// file or the environment).
func (c *Config) validate(ps *problems) {
	switch {
	case c.Hostname == "":
		if host, _ := os.Hostname(); host != "" {
			// The file set it empty: leaving the key out gives the default.
			ps.add("hostname", "is empty: set a name, or leave the key out for the system's host name (%s)", host)
		} else {
			ps.add("hostname", "is required (the host name could not be found from the system)")
		}
	case !validDomain(c.Hostname) || isIP(c.Hostname):
		ps.add("hostname", "%q is not a valid domain name", c.Hostname)
	}
	if c.DataDir == "" {
		ps.add("data_dir", "must not be empty")
	}
	if c.Postmaster != "" {
		at := strings.LastIndexByte(c.Postmaster, '@')
		if at <= 0 || !validDomain(c.Postmaster[at+1:]) || strings.ContainsAny(c.Postmaster, " <>\t") {
			ps.add("postmaster", "%q is not an address like \"ops@example.com\"", c.Postmaster)
		} else if strings.EqualFold(c.Postmaster[:at], "postmaster") && strings.EqualFold(strings.TrimSuffix(c.Postmaster[at+1:], "."), c.Hostname) {
			ps.add("postmaster", "%q is postmaster@hostname itself: name a mailbox elsewhere", c.Postmaster)
		}
	}
	c.validateTLS(ps)
	c.validateListeners(ps)
	c.validatePolicy(ps)
	c.validateUsers(ps)
	c.validateDelivery(ps)
	c.validateRoutes(ps)
	c.validateTLSPolicies(ps)
	c.validateDKIM(ps)
	if c.Admin.MetricsAddress != "" {
		if err := checkListenAddress(c.Admin.MetricsAddress); err != nil {
			ps.add("admin.metrics_address", "%v", err)
		} else if i := c.listenerOverlapping(c.Admin.MetricsAddress); i >= 0 {
			ps.add("admin.metrics_address", "%q overlaps listener[%d] (%q): both cannot be bound", c.Admin.MetricsAddress, i, c.Listener[i].Address)
		}
	}
	c.validateAdminSocket(ps)
	if g := c.Admin.SocketGroup; g != "" {
		if _, err := user.LookupGroup(g); err != nil {
			ps.add("admin.socket_group", "group %q does not exist on this system", g)
		}
	}
	oneOf(ps, "log.format", c.Log.Format, LogFormats...)
	oneOf(ps, "log.level", c.Log.Level, LogLevels...)
	l := &c.Limits
	positive(ps, "limits.max_connections", l.MaxConnections)
	positive(ps, "limits.max_connections_per_ip", l.MaxConnectionsPerIP)
	positiveDuration(ps, "limits.idle_timeout", l.IdleTimeout)
	positiveDuration(ps, "limits.session_timeout", l.SessionTimeout)
	positive(ps, "limits.max_line_length", l.MaxLineLength)
	positive(ps, "limits.max_errors", l.MaxErrors)
	positive(ps, "limits.max_auth_failures", l.MaxAuthFailures)
	positiveDuration(ps, "limits.auth_block_time", l.AuthBlockTime)
	positive(ps, "limits.max_header_size", l.MaxHeaderSize)
	positiveDuration(ps, "limits.shutdown_timeout", l.ShutdownTimeout)
}

func (c *Config) validateTLS(ps *problems) {
	cert, key := c.TLS.CertFile, c.TLS.KeyFile
	switch {
	case cert == "" && key == "":
		return
	case cert == "":
		ps.add("tls.cert_file", "is empty but tls.key_file is set: set both or neither")
		return
	case key == "":
		ps.add("tls.key_file", "is empty but tls.cert_file is set: set both or neither")
		return
	}
	certPEM, err1 := readFile(cert)
	if err1 != nil {
		ps.add("tls.cert_file", "%v", err1)
	}
	keyPEM, err2 := readFile(key)
	if err2 != nil {
		ps.add("tls.key_file", "%v", err2)
	}
	if err1 == nil && err2 == nil {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			ps.add("tls.cert_file", "cannot use the certificate with tls.key_file: %v", err)
		}
	}
}

func (c *Config) validateListeners(ps *problems) {
	if len(c.Listener) == 0 {
		ps.add("listener", "at least one [[listener]] is required")
	}
	var bound []listenEndpoint
	for i, l := range c.Listener {
		key := fmt.Sprintf("listener[%d]", i)
		if err := checkListenAddress(l.Address); err != nil {
			ps.add(key+".address", "%v", err)
		} else if ep, ok := endpointOf(l.Address, i); ok {
			clash := -1
			for _, o := range bound {
				if ep.overlaps(o) {
					clash = o.index
					break
				}
			}
			if clash >= 0 {
				ps.add(key+".address", "%q overlaps listener[%d] (%q): both cannot be bound", l.Address, clash, c.Listener[clash].Address)
			} else {
				bound = append(bound, ep)
			}
		}
		oneOf(ps, key+".mode", l.Mode, ListenerModes...)
	}
}

// maxSocketPath is the longest path a unix socket may have on Linux
// (sun_path holds 108 bytes with the final NUL).
const maxSocketPath = 107

// validateAdminSocket checks that admin.socket can be bound: a path short
// enough for a unix socket, not another kind of file, in a directory that
// exists (serve creates data_dir, not other directories).
func (c *Config) validateAdminSocket(ps *problems) {
	sock := c.Admin.Socket
	if sock == "" {
		return
	}
	if len(sock) > maxSocketPath {
		ps.add("admin.socket", "%q is %d bytes long: a unix socket path may have at most %d (set admin.socket to a shorter path, or a shorter data_dir)", sock, len(sock), maxSocketPath)
		return
	}
	if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket == 0 {
		// serve replaces a stale socket, never another file.
		ps.add("admin.socket", "%s exists and is not a socket", sock)
		return
	}
	dir := filepath.Dir(sock)
	if dir == filepath.Clean(c.DataDir) {
		return
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		ps.add("admin.socket", "the directory %s does not exist (only data_dir is created at start)", dir)
	}
}

// listenerOverlapping returns the index of the first [[listener]] whose
// address cannot be bound beside addr, or -1.
func (c *Config) listenerOverlapping(addr string) int {
	ep, ok := endpointOf(addr, -1)
	if !ok {
		return -1
	}
	for i, l := range c.Listener {
		if o, ok := endpointOf(l.Address, i); ok && ep.overlaps(o) {
			return i
		}
	}
	return -1
}

func (c *Config) validatePolicy(ps *problems) {
	p := &c.Policy
	p.Trusted = nil
	for i, s := range p.TrustedNetworks {
		pfx, err := parseNetwork(s)
		if err != nil {
			ps.add(fmt.Sprintf("policy.trusted_networks[%d]", i), "%v", err)
			continue
		}
		p.Trusted = append(p.Trusted, pfx)
	}
	if p.MaxMessageSize <= 0 {
		ps.add("policy.max_message_size", "must be more than 0 bytes, not %d", p.MaxMessageSize)
	}
	positive(ps, "policy.max_recipients", p.MaxRecipients)
}

func (c *Config) validateUsers(ps *problems) {
	seen := map[string]int{}
	for i, u := range c.User {
		key := fmt.Sprintf("user[%d]", i)
		switch j, dup := seen[u.Name]; {
		case u.Name == "":
			ps.add(key+".name", "is required")
		case dup:
			ps.add(key+".name", "%q is also the name of user[%d]", u.Name, j)
		default:
			seen[u.Name] = i
		}
		if err := checkBcrypt(u.PasswordHash); err != nil {
			ps.add(key+".password_hash", "%v", err)
		}
		for j, s := range u.Senders {
			if err := checkSender(s); err != nil {
				ps.add(fmt.Sprintf("%s.senders[%d]", key, j), "%v", err)
			}
		}
	}
}

func (c *Config) validateDelivery(ps *problems) {
	d := &c.Delivery
	for i, r := range d.Resolvers {
		norm, err := normaliseResolver(r)
		if err != nil {
			ps.add(fmt.Sprintf("delivery.resolvers[%d]", i), "%v", err)
			continue
		}
		d.Resolvers[i] = norm
	}
	if d.MXPort < 1 || d.MXPort > 65535 {
		ps.add("delivery.mx_port", "must be a port number from 1 to 65535, not %d", d.MXPort)
	}
	if len(d.RetryIntervals) == 0 {
		ps.add("delivery.retry_intervals", "must list at least one interval")
	}
	for i, r := range d.RetryIntervals {
		positiveDuration(ps, fmt.Sprintf("delivery.retry_intervals[%d]", i), r)
	}
	positiveDuration(ps, "delivery.max_queue_age", d.MaxQueueAge)
	positiveDuration(ps, "delivery.delay_warning", d.DelayWarning)
	positive(ps, "delivery.concurrency", d.Concurrency)
	positive(ps, "delivery.per_domain_concurrency", d.PerDomainConcurrency)
	positive(ps, "delivery.max_recipients_per_transaction", d.MaxRecipientsPerTransaction)
	positiveDuration(ps, "delivery.connect_timeout", d.ConnectTimeout)
	positiveDuration(ps, "delivery.greeting_timeout", d.GreetingTimeout)
	positiveDuration(ps, "delivery.command_timeout", d.CommandTimeout)
	positiveDuration(ps, "delivery.data_init_timeout", d.DataInitTimeout)
	positiveDuration(ps, "delivery.data_timeout", d.DataTimeout)
	positiveDuration(ps, "delivery.data_end_timeout", d.DataEndTimeout)
	positiveDuration(ps, "delivery.idle_conn_timeout", d.IdleConnTimeout)
	c.validateTLSLevel(ps, "delivery.tls_policy", d.TLSPolicy)
	if d.MTASTSPort < 1 || d.MTASTSPort > 65535 {
		ps.add("delivery.mta_sts_port", "must be a port number from 1 to 65535, not %d", d.MTASTSPort)
	}
	if d.ExtraRootsFile != "" {
		if pem, err := readFile(d.ExtraRootsFile); err != nil {
			ps.add("delivery.extra_roots_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			ps.add("delivery.extra_roots_file", "%s holds no PEM certificate", d.ExtraRootsFile)
		}
	}
	if d.TLSReportInterval.Duration < time.Second {
		ps.add("delivery.tls_report_interval", "must be a duration of at least 1s, not %q", d.TLSReportInterval.Duration.String())
	}
	if f := d.TLSReportFrom; f != "" {
		if err := checkSender(f); err != nil || strings.HasPrefix(f, "@") {
			ps.add("delivery.tls_report_from", "%q is not an address such as \"postmaster@relay.example\"", f)
		}
	}
}

// validateTLSLevel checks one TLS level: a known one, and "dane" only with
// a resolver trusted to validate DNSSEC.
func (c *Config) validateTLSLevel(ps *problems, key, level string) {
	before := len(ps.list)
	oneOf(ps, key, level, TLSLevels...)
	if len(ps.list) == before && level == TLSDANE && !c.Delivery.DNSSECTrustedResolver {
		ps.add(key, "\"dane\" needs delivery.dnssec_trusted_resolver = true (a DNSSEC-validating resolver whose AD bit can be believed)")
	}
}

// validateTLSPolicies checks the [[tls_policy]] entries: domains listed
// once, a known level.
func (c *Config) validateTLSPolicies(ps *problems) {
	owner := map[string]int{}
	for i := range c.TLSPolicies {
		p := &c.TLSPolicies[i]
		key := fmt.Sprintf("tls_policy[%d]", i)
		if len(p.Domains) == 0 {
			ps.add(key+".domains", "must list at least one domain")
		}
		for j, d := range p.Domains {
			dkey := fmt.Sprintf("%s.domains[%d]", key, j)
			if !validDomain(d) || isIP(d) {
				ps.add(dkey, "%q is not a domain name (write exact domains; delivery.tls_policy covers all others)", d)
				continue
			}
			if k, dup := owner[d]; dup {
				ps.add(dkey, "%q is already in tls_policy[%d]: a domain may be in one tls_policy only", d, k)
				continue
			}
			owner[d] = i
		}
		if p.Level == "" {
			ps.add(key+".level", "is required: one of %s", strings.Join(TLSLevels, ", "))
			continue
		}
		c.validateTLSLevel(ps, key+".level", p.Level)
	}
}

func (c *Config) validateRoutes(ps *problems) {
	owner := map[string]int{} // domain → route index
	for i := range c.Route {
		r := &c.Route[i]
		key := fmt.Sprintf("route[%d]", i)
		if len(r.Domains) == 0 {
			ps.add(key+".domains", "must list at least one domain (or \"*\" for all others)")
		}
		for j, d := range r.Domains {
			dkey := fmt.Sprintf("%s.domains[%d]", key, j)
			if d != "*" && !validDomain(d) {
				ps.add(dkey, "%q is not a domain name (write exact domains, or \"*\" alone for all others)", d)
				continue
			}
			if k, dup := owner[d]; dup {
				if d == "*" {
					ps.add(dkey, "\"*\" is already in route[%d]: only one route may take all other domains", k)
				} else {
					ps.add(dkey, "%q is already in route[%d]: a domain may be in one route only", d, k)
				}
				continue
			}
			owner[d] = i
		}
		r.validateSmarthost(ps, key)
		oneOf(ps, key+".tls", r.TLS, RouteTLSModes...)
		if r.CAFile != "" {
			if pem, err := readFile(r.CAFile); err != nil {
				ps.add(key+".ca_file", "%v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				ps.add(key+".ca_file", "%s holds no PEM certificate", r.CAFile)
			}
		}
		r.validatePassword(ps, key)
		if r.TLS == RouteTLSNone && r.Username != "" {
			// mailhop never sends credentials in plain text (RFC 4954
			// §4), so such a route could never deliver.
			ps.add(key+".username", "AUTH needs tls = %q or %q: credentials are never sent over a plain-text connection", RouteTLSStartTLS, RouteTLSImplicit)
		}
	}
}

// validateSmarthost normalises smarthost (a string or an array of strings)
// into Smarthosts.
func (r *Route) validateSmarthost(ps *problems, key string) {
	key += ".smarthost"
	r.Smarthosts = nil
	var hosts []string
	switch v := r.Smarthost.(type) {
	case nil:
	case string:
		hosts = []string{v}
	case []any:
		for j, h := range v {
			s, ok := h.(string)
			if !ok {
				ps.add(fmt.Sprintf("%s[%d]", key, j), "must be a string \"host:port\"")
				return
			}
			hosts = append(hosts, s)
		}
	default:
		ps.add(key, "must be a string \"host:port\" or an array of them")
		return
	}
	if len(hosts) == 0 {
		ps.add(key, "is required: the \"host:port\" of the upstream server, or an array of them")
		return
	}
	for j, h := range hosts {
		k := key
		if _, isList := r.Smarthost.([]any); isList {
			k = fmt.Sprintf("%s[%d]", key, j)
		}
		if err := checkHostPort(h, false); err != nil {
			ps.add(k, "%v", err)
			continue
		}
		r.Smarthosts = append(r.Smarthosts, h)
	}
}

// validatePassword checks that username and exactly one password source go
// together, and loads the password from its file or environment variable.
func (r *Route) validatePassword(ps *problems, key string) {
	var set []string
	if r.Password != "" {
		set = append(set, "password")
	}
	if r.PasswordFile != "" {
		set = append(set, "password_file")
	}
	if r.PasswordEnv != "" {
		set = append(set, "password_env")
	}
	switch {
	case len(set) > 1:
		ps.add(key+"."+set[1], "%s are set together: use only one of password, password_file, password_env", strings.Join(set, " and "))
		return
	case r.Username == "" && len(set) == 1:
		ps.add(key+"."+set[0], "is set but username is not: set both or neither")
		return
	case r.Username != "" && len(set) == 0:
		ps.add(key+".username", "is set without a password: add password, password_file or password_env")
		return
	}
	switch {
	case r.PasswordFile != "":
		data, err := readFile(r.PasswordFile)
		if err != nil {
			ps.add(key+".password_file", "%v", err)
			return
		}
		pw := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if pw == "" {
			ps.add(key+".password_file", "%s is empty", r.PasswordFile)
			return
		}
		r.Password = pw
	case r.PasswordEnv != "":
		pw, ok := os.LookupEnv(r.PasswordEnv)
		switch {
		case !ok:
			ps.add(key+".password_env", "environment variable %s is not set", r.PasswordEnv)
		case pw == "":
			ps.add(key+".password_env", "environment variable %s is empty", r.PasswordEnv)
		default:
			r.Password = pw
		}
	}
}

func (c *Config) validateDKIM(ps *problems) {
	for i, d := range c.DKIM {
		key := fmt.Sprintf("dkim[%d]", i)
		switch {
		case d.Domain == "":
			ps.add(key+".domain", "is required")
		case !validDomain(d.Domain):
			ps.add(key+".domain", "%q is not a valid domain name", d.Domain)
		}
		switch {
		case d.Selector == "":
			ps.add(key+".selector", "is required")
		case !validDomain(d.Selector):
			ps.add(key+".selector", "%q is not a valid selector (letters, digits, '-' and '.')", d.Selector)
		}
		if d.KeyFile == "" {
			ps.add(key+".key_file", "is required")
		} else if data, err := readFile(d.KeyFile); err != nil {
			ps.add(key+".key_file", "%v", err)
		} else if _, err := dkimkey.Parse(data); err != nil {
			ps.add(key+".key_file", "%s: %v", d.KeyFile, err)
		}
	}
}

// oneOf records a problem unless v is one of allowed.
func oneOf(ps *problems, key, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	ps.add(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

func positive(ps *problems, key string, n int) {
	if n <= 0 {
		ps.add(key, "must be more than 0, not %d", n)
	}
}

func positiveDuration(ps *problems, key string, d Duration) {
	if d.Duration <= 0 {
		ps.add(key, "must be a duration more than 0, not %q", d.Duration.String())
	}
}

// readFile reads a small regular file named by the configuration.
func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, describeFileError(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s is too large (%d bytes) for this setting", path, fi.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, describeFileError(path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, err)
	}
	return data, nil
}

func describeFileError(path string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist", path)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s is not readable (permission denied)", path)
	}
	return fmt.Errorf("cannot read %s: %v", path, err)
}

// validDomain reports whether s is a domain name in ASCII (A-labels for
// international names), with an optional final dot.
func validDomain(s string) bool {
	return dnsmx.IsDomainSyntax(strings.TrimSuffix(s, "."), false)
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// checkHostPort checks "host:port" where host is a domain name or an IP
// address (IPv6 in brackets). With allowEmpty, host may be empty and port 0
// (listen on every address; let the kernel choose a port).
func checkHostPort(s string, allowEmpty bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return fmt.Errorf("%q has no port: write \"host:port\"", s)
		}
		return fmt.Errorf("%q is not \"host:port\" (IPv6 goes in brackets: \"[::1]:2525\")", s)
	}
	switch {
	case host == "" && allowEmpty:
	case host == "":
		return fmt.Errorf("%q has no host", s)
	case isIP(host):
		if strings.Contains(host, ":") && !strings.HasPrefix(s, "[") {
			return fmt.Errorf("%q: put an IPv6 address in brackets, like \"[::1]:2525\"", s)
		}
	case !validDomain(host):
		return fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
	}
	n, err := strconv.Atoi(port)
	low := 1
	if allowEmpty {
		low = 0
	}
	if err != nil || n < low || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from %d to 65535", s, port, low)
	}
	return nil
}

// checkListenAddress checks an address to listen on.
func checkListenAddress(s string) error {
	if s == "" {
		return errors.New("is required, like \"127.0.0.1:2525\" or \"[::1]:2525\"")
	}
	return checkHostPort(s, true)
}

// canonicalAddress is the form of a listen address used to find duplicates;
// ok is false for port 0, which never collides.
// listenEndpoint is what a listener binds: a port on some addresses.
type listenEndpoint struct {
	index int
	port  int
	addrs []netip.Addr // nil: every address (see v4only)
	// v4only: "0.0.0.0", every IPv4 address; "" and "::" are every address
	// of both families (Go listens dual-stack).
	v4only bool
}

// endpointOf reads a listener address; port 0 (the kernel chooses) never
// clashes. "localhost" is 127.0.0.1 (RFC 6761; Go binds the IPv4 address
// of a name); other names are not looked up.
func endpointOf(s string, index int) (listenEndpoint, bool) {
	host, portText, err := net.SplitHostPort(s)
	port, perr := strconv.Atoi(portText)
	if err != nil || perr != nil || port == 0 {
		return listenEndpoint{}, false
	}
	ep := listenEndpoint{index: index, port: port}
	switch h := strings.ToLower(host); {
	case h == "" || h == "::":
	case h == "0.0.0.0":
		ep.v4only = true
	case h == "localhost":
		// Go listens on one address of a name, IPv4 first.
		ep.addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	default:
		a, err := netip.ParseAddr(h)
		if err != nil {
			return listenEndpoint{}, false
		}
		ep.addrs = []netip.Addr{a.Unmap()}
	}
	return ep, true
}

// covers reports whether e binds address a.
func (e listenEndpoint) covers(a netip.Addr) bool {
	switch {
	case e.addrs == nil && e.v4only:
		return a.Is4()
	case e.addrs == nil:
		return true
	}
	return slices.Contains(e.addrs, a)
}

// overlaps reports whether e and o cannot both be bound.
func (e listenEndpoint) overlaps(o listenEndpoint) bool {
	if e.port != o.port {
		return false
	}
	if e.addrs == nil && o.addrs == nil {
		return true // two wildcards (IPv4 and dual-stack clash too)
	}
	if e.addrs == nil {
		e, o = o, e
	}
	for _, a := range e.addrs {
		if o.covers(a) {
			return true
		}
	}
	return false
}

// parseNetwork parses a CIDR prefix or a bare IP address (a /32 or /128).
// IPv4-mapped IPv6 prefixes become IPv4 prefixes, so IsTrusted matches both
// spellings of an IPv4 client.
func parseNetwork(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%q is not a network like \"192.0.2.0/24\" or \"2001:db8::/32\"", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return p, fmt.Errorf("%q is not an IP address or a network like \"192.0.2.0/24\"", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// checkBcrypt checks that h looks like a bcrypt hash.
func checkBcrypt(h string) error {
	if h == "" {
		return errors.New("is required (make one with \"mailhop passwd\")")
	}
	ok := len(h) == 60 && (strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$"))
	if ok {
		_, err := bcrypt.Cost([]byte(h))
		ok = err == nil
	}
	if !ok {
		return errors.New("is not a bcrypt hash (\"$2a$\", \"$2b$\" or \"$2y$\", 60 characters; make one with \"mailhop passwd\")")
	}
	return nil
}

// checkSender checks a senders entry: "local@domain" or "@domain".
func checkSender(s string) error {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return fmt.Errorf("%q is neither an address (\"app@example.com\") nor \"@domain\"", s)
	}
	local, domain := s[:at], s[at+1:]
	if !validDomain(asciiDomain(domain)) {
		return fmt.Errorf("%q: %q is not a valid domain name", s, domain)
	}
	if strings.ContainsAny(local, " \t<>\"") {
		return fmt.Errorf("%q: write the bare address, without spaces, quotes or <>", s)
	}
	// Such a sender could never match: the relay refuses it in MAIL FROM.
	if at > 0 && !isDotString(local) {
		return fmt.Errorf("%q: %q is not a valid local part (RFC 5321 dot-string: letters, digits and !#$%%&'*+-/=?^_`{|}~, dots between them)", s, local)
	}
	if at > 0 && len(s) > maxPath {
		return fmt.Errorf("%q is %d octets long: an address may have at most %d (RFC 5321 §4.5.3.1.3)", s, len(s), maxPath)
	}
	return nil
}

// maxPath is the longest address the relay takes in MAIL FROM: RFC 5321
// §4.5.3.1.3's 256 octets of path minus the angle brackets. The local
// part's 64 octets (§4.5.3.1.1) are not enforced there, as Postfix does not.
const maxPath = 254

// isDotString checks an unquoted local part, RFC 5321 Dot-string (with
// UTF-8, RFC 6531).
func isDotString(s string) bool {
	if s == "" {
		return false
	}
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			c := atom[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80 ||
				strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
			if !ok {
				return false
			}
		}
	}
	return true
}

// normaliseResolver turns a DNS server address into "host:port", adding port
// 53 to a bare IP address.
func normaliseResolver(s string) (string, error) {
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil && a.Zone() == "" {
		return net.JoinHostPort(a.String(), "53"), nil
	}
	if err := checkHostPort(s, false); err != nil {
		return "", err
	}
	if host, _, _ := net.SplitHostPort(s); !isIP(host) {
		// Finding it would take a DNS query through the system's resolver,
		// which these servers are there to replace (resolv.conf takes
		// addresses only, too).
		return "", fmt.Errorf("%q: a resolver is given by its IP address, not a host name", s)
	}
	return s, nil
}
