import { testClockConformance } from "../../testing/clock_conformance.ts";
import { realClock } from "./clock.ts";

testClockConformance("realClock", () => ({
  clock: realClock,
  async wait(done, what) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`Timed out after 5000 ms waiting for ${what}`)),
        5000,
      );
    });
    try {
      return await Promise.race([done, deadline]);
    } finally {
      clearTimeout(timer);
    }
  },
}));
