/**
 * The validity dates of a node's certificates, checked against its clock when it loads them (at
 * start and on every reload): a certificate that expired, or is not valid yet, is refused at
 * every handshake by peers and clients alike, so taking it would cut the node off.
 *
 * @module
 */

import type { X509Certificate } from "node:crypto";
import { ConfigError } from "./errors.ts";

/**
 * How far in the future a certificate's start may lie and still be taken: the clocks of the
 * machine that issued it and of this one may differ by that much (openssl and most tools date a
 * new certificate from the moment they sign it).
 */
export const CLOCK_SKEW_MS = 5 * 60_000;

/**
 * Refuses a certificate the clock says is not valid: past its end (`notAfter`), or more than
 * {@linkcode CLOCK_SKEW_MS} before its start (`notBefore`).
 *
 * @example Usage
 * ```ts
 * import { checkCertificateDates } from "./cert_dates.ts";
 *
 * // The dates as node:crypto's X509Certificate gives them.
 * const cert = { validFrom: "Jan  1 00:00:00 2020 GMT", validTo: "Jan  1 00:00:00 2021 GMT" };
 * checkCertificateDates(cert, '--peer-cert "n1.crt"', Date.parse("2020-06-01T00:00:00Z"));
 * try {
 *   checkCertificateDates(cert, '--peer-cert "n1.crt"', Date.parse("2022-01-01T00:00:00Z"));
 *   console.assert(false);
 * } catch (e) {
 *   console.assert(String(e).includes("expired on 2021-01-01T00:00:00.000Z"));
 * }
 * ```
 *
 * @param cert The certificate.
 * @param where The setting and file it came from, for the message (`--peer-cert "n1.crt"`).
 * @param now The time to check against, in milliseconds since the epoch.
 * @throws {ConfigError} Saying when it expired or when it starts.
 */
export function checkCertificateDates(
  cert: Pick<X509Certificate, "validFrom" | "validTo">,
  where: string,
  now: number,
): void {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (Number.isFinite(to) && now > to) {
    throw new ConfigError(
      `The certificate in ${where} expired on ${new Date(to).toISOString()}: peers and clients ` +
        "refuse it; renew it",
    );
  }
  if (Number.isFinite(from) && from - now > CLOCK_SKEW_MS) {
    throw new ConfigError(
      `The certificate in ${where} is not valid before ${new Date(from).toISOString()}, and ` +
        `this machine's clock says ${
          new Date(now).toISOString()
        }: peers and clients would refuse ` +
        "it (is a clock wrong?)",
    );
  }
}
