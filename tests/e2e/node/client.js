// The official openai npm package against `llm-cache-proxy run --replay`: no code change,
// the SDK reads OPENAI_BASE_URL and OPENAI_API_KEY from the environment the proxy sets.
const OpenAI = require("openai");

function expect(actual, wanted, what) {
  if (actual !== wanted) {
    throw new Error(`${what}: got ${JSON.stringify(actual)}, wanted ${JSON.stringify(wanted)}`);
  }
}

async function main() {
  const client = new OpenAI({ maxRetries: 0 });
  const said = "This is the demo model. You said: ";
  const plain = await client.chat.completions.create({
    model: "fake-direct",
    messages: [{ role: "user", content: "ci fixture" }],
  });
  expect(plain.choices[0].message.content, said + "ci fixture", "chat");
  const stream = await client.chat.completions.create({
    model: "fake-direct",
    messages: [{ role: "user", content: "ci stream" }],
    stream: true,
  });
  let text = "";
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content || "";
  }
  expect(text, said + "ci stream", "chat stream");
  const vectors = await client.embeddings.create({ model: "fake-direct", input: "ci vector" });
  expect(vectors.data.length, 1, "embeddings");
  expect(vectors.data[0].embedding.length > 0, true, "embedding length");
  console.log("node ok");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
