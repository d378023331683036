// attest-load: one load client for both control planes, so neither is measured
// through a slower client than the other. Every bootstrap is a NEW TLS
// connection with its own join token and a pre-generated P-256 CSR, made by
// -concurrency goroutines until -total are done; prints one JSON line.
//
//	-target spire:     spire-server's AttestAgent RPC (gRPC over TLS, the stream
//	                   spire-agent opens), join_token attestation; the server is
//	                   verified as spire-agent does (bundle + spiffe://TD/spire/server).
//	                   Tokens are created first over the admin socket (CreateJoinToken).
//	-target registrar: mesh-registrar's POST /v1/attest (HTTPS, Connection: close),
//	                   verified against its CA; tokens read from -tokens (one a line).
//
// Prints "prepared" on stderr once tokens and CSRs exist and starts on a
// newline on stdin. Benchmark-only; built by scripts/bench/side_by_side.py with the go.mod that
// scripts/bootstrap-spire keeps beside the SPIRE binaries.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

type result struct {
	OK        int     `json:"ok"`
	Errors    int     `json:"errors"`
	FirstErr  string  `json:"first_error"`
	WallS     float64 `json:"wall_s"`
	PerSecond float64 `json:"per_second"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	ClientCPU float64 `json:"client_cpu_s"`
	PrepS     float64 `json:"prep_s"`
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "attest-load:", err)
		os.Exit(2)
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func csr() []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	must(err)
	return der
}

func spireTokens(socket string, n int) []string {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(err)
	defer conn.Close()
	client := agentv1.NewAgentClient(conn)
	out := make([]string, n)
	for i := range out {
		tok, err := client.CreateJoinToken(context.Background(), &agentv1.CreateJoinTokenRequest{Ttl: 3600})
		must(err)
		out[i] = tok.Value
	}
	return out
}

type attestFn func(token string, csrDER []byte) error

func spireAttest(addr, bundlePath, td string) attestFn {
	trustDomain := spiffeid.RequireTrustDomainFromString(td)
	bundle, err := x509bundle.Load(trustDomain, bundlePath)
	must(err)
	serverID, err := spiffeid.FromPath(trustDomain, "/spire/server")
	must(err)
	creds := credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(serverID)))
	return func(token string, csrDER []byte) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		stream, err := agentv1.NewAgentClient(conn).AttestAgent(ctx)
		if err != nil {
			return err
		}
		err = stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{
			Params: &agentv1.AttestAgentRequest_Params{
				Data:   &types.AttestationData{Type: "join_token", Payload: []byte(token)},
				Params: &agentv1.AgentX509SVIDParams{Csr: csrDER},
			}}})
		if err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if resp.GetResult().GetSvid() == nil || len(resp.GetResult().GetSvid().CertChain) == 0 {
			return fmt.Errorf("no SVID in the answer")
		}
		return stream.CloseSend()
	}
}

func registrarAttest(url, caPath string) attestFn {
	pemBytes, err := os.ReadFile(caPath)
	must(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		must(fmt.Errorf("no certificate in %s", caPath))
	}
	host := strings.Split(strings.TrimPrefix(url, "https://"), ":")[0]
	return func(token string, csrDER []byte) error {
		// A new transport per bootstrap: a new TCP+TLS connection, as a booting VM makes.
		transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host},
			DisableKeepAlives: true}
		defer transport.CloseIdleConnections()
		body, _ := json.Marshal(map[string]any{
			"evidence": map[string]string{"type": "join_token", "token": token},
			"csr":      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
			"hostname": "bench",
		})
		for {
			resp, err := (&http.Client{Transport: transport, Timeout: 60 * time.Second}).Post(
				url+"/v1/attest", "application/json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 429 { // the registrar's own limiter: wait as told, retry
				time.Sleep(time.Second)
				continue
			}
			if resp.StatusCode != 200 || !bytes.Contains(data, []byte(`"spiffe_id"`)) {
				return fmt.Errorf("status %d: %.200s", resp.StatusCode, data)
			}
			return nil
		}
	}
}

func main() {
	target := flag.String("target", "", "spire | registrar")
	addr := flag.String("addr", "", "spire: host:port; registrar: https://host:port")
	socket := flag.String("socket", "", "spire: admin API socket (creates the tokens)")
	bundle := flag.String("bundle", "", "spire: trust bundle PEM; registrar: CA PEM")
	td := flag.String("trust-domain", "example.org", "spire: trust domain")
	tokensFile := flag.String("tokens", "", "registrar: join tokens, one a line")
	total := flag.Int("total", 2000, "bootstraps")
	concurrency := flag.Int("concurrency", 200, "clients at once")
	flag.Parse()

	prep := time.Now()
	var tokens []string
	var attest attestFn
	switch *target {
	case "spire":
		tokens = spireTokens(*socket, *total)
		attest = spireAttest(*addr, *bundle, *td)
	case "registrar":
		data, err := os.ReadFile(*tokensFile)
		must(err)
		tokens = strings.Fields(string(data))
		if len(tokens) < *total {
			must(fmt.Errorf("%d tokens for %d bootstraps", len(tokens), *total))
		}
		attest = registrarAttest(*addr, *bundle)
	default:
		must(fmt.Errorf("-target spire|registrar"))
	}
	csrs := make([][]byte, *total)
	for i := range csrs {
		csrs[i] = csr()
	}
	res := result{PrepS: time.Since(prep).Seconds()}
	// Tokens and CSRs are made: say so, and start when told (a newline on stdin),
	// so the caller can read the server's CPU between preparation and the run.
	fmt.Fprintln(os.Stderr, "prepared")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')

	var next atomic.Int64
	var mu sync.Mutex
	latencies := make([]float64, 0, *total)
	var wg sync.WaitGroup
	cpu0 := cpuSeconds()
	start := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *total {
					return
				}
				t := time.Now()
				err := attest(tokens[i], csrs[i])
				took := time.Since(t).Seconds()
				mu.Lock()
				if err != nil {
					res.Errors++
					if res.FirstErr == "" {
						res.FirstErr = err.Error()
					}
				} else {
					res.OK++
					latencies = append(latencies, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.WallS = time.Since(start).Seconds()
	res.ClientCPU = cpuSeconds() - cpu0
	res.PerSecond = float64(res.OK) / res.WallS
	sort.Float64s(latencies)
	if n := len(latencies); n > 0 {
		res.P50Ms = latencies[n/2] * 1000
		res.P99Ms = latencies[min(n-1, n*99/100)] * 1000
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
