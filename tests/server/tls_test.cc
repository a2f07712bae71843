// TLS and mutual TLS with certificates that the test generates with the openssl CLI.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "grpcpp/security/credentials.h"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

// Writes a self-signed certificate for localhost and 127.0.0.1 as NAME.pem with key NAME.key.
bool MakeCertificate(const TempDir& dir, const std::string& name) {
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost",
      " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ", (dir / (name + ".key")).string(),
      " -out ", (dir / (name + ".pem")).string(), " 2>/dev/null");
  return RunCommand(command) == 0;
}

grpc::Status GenerateOver(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::W8A8Serve::NewStub(channel);
  auto context = ContextWithDeadline(10);
  v1::GenerateResponse response;
  return stub->Generate(context.get(), GreedyRequest("Once upon a time", 5), &response);
}

TEST(TlsTest, ServesOverTlsOnly) {
  TempDir dir;
  ASSERT_TRUE(MakeCertificate(dir, "server"));
  server::ServerOptions options = TestServerOptions();
  options.tls_cert = (dir / "server.pem").string();
  options.tls_key = (dir / "server.key").string();
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(dir / "server.pem");
  const grpc::Status secure =
      GenerateOver(grpc::CreateChannel(server.address(), grpc::SslCredentials(ssl)));
  EXPECT_TRUE(secure.ok()) << secure.error_message();

  const grpc::Status plaintext =
      GenerateOver(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(TlsTest, MutualTlsRequiresClientCertificate) {
  TempDir dir;
  ASSERT_TRUE(MakeCertificate(dir, "server"));
  ASSERT_TRUE(MakeCertificate(dir, "client"));
  ASSERT_TRUE(MakeCertificate(dir, "stranger"));
  server::ServerOptions options = TestServerOptions();
  options.tls_cert = (dir / "server.pem").string();
  options.tls_key = (dir / "server.key").string();
  // The self-signed client certificate is its own CA.
  options.tls_client_ca = (dir / "client.pem").string();
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  grpc::SslCredentialsOptions with_certificate;
  with_certificate.pem_root_certs = ReadFile(dir / "server.pem");
  with_certificate.pem_cert_chain = ReadFile(dir / "client.pem");
  with_certificate.pem_private_key = ReadFile(dir / "client.key");
  const grpc::Status accepted = GenerateOver(
      grpc::CreateChannel(server.address(), grpc::SslCredentials(with_certificate)));
  EXPECT_TRUE(accepted.ok()) << accepted.error_message();

  grpc::SslCredentialsOptions without_certificate;
  without_certificate.pem_root_certs = ReadFile(dir / "server.pem");
  EXPECT_FALSE(GenerateOver(grpc::CreateChannel(server.address(),
                                                grpc::SslCredentials(without_certificate)))
                   .ok());

  grpc::SslCredentialsOptions unknown_certificate = with_certificate;
  unknown_certificate.pem_cert_chain = ReadFile(dir / "stranger.pem");
  unknown_certificate.pem_private_key = ReadFile(dir / "stranger.key");
  EXPECT_FALSE(GenerateOver(grpc::CreateChannel(server.address(),
                                                grpc::SslCredentials(unknown_certificate)))
                   .ok());
}

TEST(TlsTest, MissingCertificateFileIsRejected) {
  server::ServerOptions options = TestServerOptions();
  options.tls_cert = "/nonexistent/server.pem";
  options.tls_key = "/nonexistent/server.key";
  auto started = StartTestServer(options, /*load=*/false);
  ASSERT_FALSE(started.ok());
  EXPECT_EQ(started.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(started.status().message().find("--tls-cert"), std::string::npos)
      << started.status();
}

}  // namespace
}  // namespace w8a8::testing
