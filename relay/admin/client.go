package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrNotRunning is returned by the client when nothing listens on the socket.
var ErrNotRunning = errors.New("mailhop is not running (no admin socket)")

// Client talks to a running mailhop over its admin socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{socket: path, http: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// Do sends a request and decodes the JSON reply into out (when not nil).
func (c *Client) Do(method, path string, query url.Values, body io.Reader, out any) error {
	u := "http://mailhop" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return fmt.Errorf("%w: %s", ErrNotRunning, c.socket)
		}
		return fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ae apiError
		if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
			return &StatusError{Code: resp.StatusCode, Msg: ae.Error}
		}
		return &StatusError{Code: resp.StatusCode, Msg: string(data)}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// StatusError is an error reply from the server.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// List returns the queued messages that match the filter.
func (c *Client) List(f Filter) ([]Message, error) {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "domain": f.Domain, "sender": f.Sender, "rcpt": f.Rcpt} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.MinAge > 0 {
		q.Set("min_age", f.MinAge.String())
	}
	var out []Message
	err := c.Do("GET", "/v1/queue", q, nil, &out)
	return out, err
}

// Show returns one message.
func (c *Client) Show(id string) (*Message, error) {
	var m Message
	if err := c.Do("GET", "/v1/queue/"+url.PathEscape(id), nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Flush makes queued mail (of one domain, when not "") due now.
func (c *Client) Flush(domain string) (int, error) {
	q := url.Values{}
	if domain != "" {
		q.Set("domain", domain)
	}
	var r Result
	err := c.Do("POST", "/v1/queue/flush", q, nil, &r)
	return r.Count, err
}

// Action runs hold, release, delete or bounce on one message.
func (c *Client) Action(id, action string) error {
	return c.Do("POST", "/v1/queue/"+url.PathEscape(id)+"/"+action, nil, nil, nil)
}
